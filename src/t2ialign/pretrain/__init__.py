"""The shapes world's own models: its tokenizer, CLIP, VAE and UNet, trained on D_pre (``train``)."""
