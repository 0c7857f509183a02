"""Open Plug-n-Play: the sans-IO message layer (:mod:`.messages`) and the Flask blueprint (:mod:`.views`)."""
