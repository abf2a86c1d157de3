"""The vocabulary every layer shares: a decode request and its records, the job payload, latents on the wire, layouts, validation."""
