"""Features: what a node does with the messages it routes.

``results`` keeps the latest check result per checkable (the master's view); ``scheduler`` and
``checks`` run this node's own checks; ``commands`` runs a parent's ``event::ExecuteCommand``.
"""
