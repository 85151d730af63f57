// Placeholder: this module is being written; see README.md (Module map).
