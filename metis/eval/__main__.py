import sys

from metis.eval.cli import main

main(sys.argv[1:])
