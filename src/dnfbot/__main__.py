from dnfbot.cli import main

main()
