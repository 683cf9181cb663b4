"""Inference: what a checkpoint was trained on (spec), its clips decoded as training decoded
them (clips), and one interface that answers clips (backend) with the backends behind it
(transformers_backend). Evaluation, prediction and the task metrics while training use only the
interface, through answering."""
