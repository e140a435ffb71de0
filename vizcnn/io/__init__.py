"""Reading and writing: safe image decoding (``imageio``; ``opencv`` is the only place
that imports cv2), model inputs (``inputs``), image collections (``sources``), the
study's data streams (``streams``), atomic output folders (``output``). Imports only
``vizcnn.core``."""
