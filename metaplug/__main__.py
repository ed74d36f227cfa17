from metaplug.cli import main

main(prog_name="metaplug")
