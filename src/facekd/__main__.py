from facekd.cli import main

main()
