"""advdim.theory: symbolic laws of ||d_x f||_q under the paper's hypotheses H1-H5 and S.

Importing this package must not import torch (the symbolic side stays light).
"""

__all__: list[str] = []
