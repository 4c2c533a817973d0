from stylebatch.cli import entry

entry()
