"""The ZFNet first-layer study (Zeiler & Fergus 2014, §4.1 and Fig. 6), as one wing.

- ``train``: the presets, the networks, the recipe and the training loop;
- ``data``: the data streams (the same images in the same order for every design);
- ``checkpoint``: the one owner of the study's checkpoint format;
- ``metrics``: what each claim is measured by;
- ``measure``: every number of one trained model, and the claims' summary over seeds;
- ``stats``: intervals and the verdict rules;
- ``figures``: the study's figures and report text;
- ``run``: the study end to end, into an output folder.
"""
