"""Stage 1, prepare: the dataset as NVIDIA ships it (rawdata) cut into labelled 1-second segments
(labels, writer), split by clip (splits) and turned into a Hugging Face dataset (hf_dataset)."""
