"""The JSON API of the human side (DRF); one module per concept (projects, prompts,
comparisons, judging, data, auth); alignment/api.py adds the machine side.

Token or session authentication. Every view gates through annotate.access, as the pages do:
outside a user's projects everything is a 404, and a role too low for a view is a 404 as
well. Each view parses its input with its own serializer and calls one service or selector.
Errors share one JSON shape, and paging one query (core/api.py).
"""
