from subprof.cli import main

main()
