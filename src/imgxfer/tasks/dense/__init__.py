"""The dense tasks, ``--task segment`` and ``--task detect``: models made of a registered
encoder's feature maps and a head, their adapters, metrics and the run stage
(docs/architecture.md, "Segmentation and detection")."""
