"""One RL step's rollout half: the pipeline of named steps the rollout callback runs every epoch
(:mod:`echorl_lightning.pipeline.steps`) and the engine's weight sync (:mod:`echorl_lightning.pipeline.engine_sync`)."""
