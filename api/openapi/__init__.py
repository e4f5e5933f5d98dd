"""The API's OpenAPI 3.1 description: `routes.py` (every route, by the pydantic models it takes and answers),
`document.py` (the document assembled from them), `views.py` (/openapi.json and the /docs page)."""
