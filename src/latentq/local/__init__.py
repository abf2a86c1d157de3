"""A deployment on one machine: the embedded Redis server and the stack ``latentq up`` runs."""
