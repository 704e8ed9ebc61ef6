"""The pages of the human side (htmx), one module per concept."""
