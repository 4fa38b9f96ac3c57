"""Run under `accelerate launch --num_processes 2`: a script run with each process in a working directory of its
own, as processes on machines of their own see their own files. argv: FOLDER_0 FOLDER_1 SCRIPT ARGS..."""
import os
import runpy
import sys

if __name__ == "__main__":
    folders, script = sys.argv[1:3], os.path.abspath(sys.argv[3])
    os.chdir(folders[int(os.environ.get("LOCAL_RANK", "0"))])
    sys.argv = [script] + sys.argv[4:]
    sys.path.insert(0, os.path.dirname(script))
    runpy.run_path(script, run_name="__main__")
