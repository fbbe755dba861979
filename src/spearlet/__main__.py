from spearlet.cli import main

main()
