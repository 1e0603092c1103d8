"""
C{python -m hfendpoint}: the C{hfendpoint} command.
"""

from hfendpoint.service._cli import console_script

console_script()
