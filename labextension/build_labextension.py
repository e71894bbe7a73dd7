"""`jupyter labextension build .` against the installed JupyterLab's own core package.json.

JupyterLab 4.6 otherwise looks up ``@jupyterlab/core-meta`` on npm for the version matching
``@jupyterlab/builder``; building against the installed JupyterLab's ``staging`` directory gives
the shared-package versions of the JupyterLab the extension runs in. Extra arguments (e.g.
``--development True``) are passed on.
"""

import os
import subprocess
import sys

import jupyterlab

core = os.path.join(os.path.dirname(jupyterlab.__file__), "staging")
command = [sys.executable, "-m", "jupyterlab.labextensions", "build", "--core-path", core,
           *sys.argv[1:], os.path.dirname(os.path.abspath(__file__))]
sys.exit(subprocess.call(command))
