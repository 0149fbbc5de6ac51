from fedchurn.cli import main

main()
