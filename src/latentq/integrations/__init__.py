"""latentq inside other people's code: Hugging Face's remote-VAE protocol, a diffusers ``vae=`` and the pipeline queue."""
