"""The flow: ``estimate`` runs the build's steps up to the cost model, ``build`` runs all of them
(load, canonicalize, passes, partition, configure, cost, lower, compile, verify, report).

Everything below (passes, partition, cost models, backends, runtime, frontend) is handed what it
needs by these modules and never imports them (docs/ARCHITECTURE.md, "Layers")."""
