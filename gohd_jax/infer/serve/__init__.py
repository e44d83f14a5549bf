"""``gohd serve``: a Gradio page and HTTP API that batch concurrent requests onto the jitted renderer."""
