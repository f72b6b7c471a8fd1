"""A handler module that cannot be imported: the workers must fail, the dispatcher give up."""

raise ImportError("this module is broken on purpose")
