"""The built-in distillation methods: one module each, found by :func:`facekd.distill.registry.methods`.

A module registers its loss class and its params model with ``@register("<name>", params=...)``;
``params.yaml`` then takes a ``distill.<name>`` section and ``dvc.yaml``'s foreach a stage for it.
A method shipped in another package registers the same way from a module named under the
``facekd.methods`` entry-point group (tests/e2e/test_dvc_pipeline.py adds one so).
"""
