"""Template metadata: load YAML + Jinja2, validate against the schema, build a Plan."""
