"""Quality assessment: the plots and measurements an operator looks at.

Each module is self-contained (import it directly); this package imports none of them.
"""
