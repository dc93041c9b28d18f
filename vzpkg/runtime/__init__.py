"""The VE runtime: vzctl, vzlist and vzubc."""
