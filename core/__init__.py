"""What both apps share and neither owns: background jobs, the request type, the API's plumbing.

It imports neither annotate nor alignment (an import-linter contract holds that).
"""
