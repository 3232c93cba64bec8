"""Everything MLflow: the client and its URI (:mod:`.client`), training and evaluation runs
(:mod:`.tracking`), what a registered version rests on (:mod:`.evidence`), the model registry's
candidate / champion aliases and their gate (:mod:`.model_registry`) and the champion for inference
(:mod:`.champion`)."""
