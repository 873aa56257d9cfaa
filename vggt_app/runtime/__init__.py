"""The server's model runtime: the weights loaded once, ZeroGPU, and one forward at a time."""
