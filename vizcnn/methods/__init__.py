"""The analyses: tensors in, tensors or small dataclasses out. Deconvnet projections
(``deconv``), saliency, occlusion (``occlusion`` + ``occlusion_engine``), invariance,
filter spectra, the sanity check, the dataset pass (``scan``), the ZFNet study
(``study``, ``study_measure``) and a reference deconvnet. Imports ``vizcnn.core`` and
``vizcnn.models`` only: never reading files, drawing or writing."""
