"""Model passes. Each is a qonnx ``Transformation``: ``apply(model) -> (model, changed)``.

Passes also append a record of what they did to ``self.records`` so the build report can list it.
"""
