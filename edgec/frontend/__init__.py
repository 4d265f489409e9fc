"""Model ingestion: safe loading, canonicalization and inspection."""
