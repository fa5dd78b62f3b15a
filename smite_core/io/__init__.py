"""Files in and out: atomic writes (``fileio``), palette label PNGs (``label_png``), colour keys (``legend``),
annotated reference images (``references``: folder or tensors -> ``ReferenceSet``), videos (``video_io``:
frames read window by window, overlay and video writers) and compositing mattes (``mattes``: per-part PNG
sequences, multi-layer EXRs). Nothing here knows the model or the method."""
