"""Model editors: language models that write minimal edits through an OpenAI-compatible endpoint.

`keys` keeps endpoint API keys encrypted, `prompts` renders the versioned prompt and parses answers,
`client` talks to the endpoint (official `openai` client, limits, retries), `propose` turns one item into
a guarded edit, `service` manages editors and their accounts, `bulk` is the job that works a project.
"""
