"""Files in and out: atomic writes (``fileio``), palette label PNGs (``label_png``), colour keys (``legend``),
annotated reference images (``references``: folder or tensors -> ``ReferenceSet``) and videos (``video_io``:
frames read window by window, overlay and video writers). Nothing here knows the model or the method."""
