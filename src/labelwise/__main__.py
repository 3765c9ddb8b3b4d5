from labelwise.cli import app

app(prog_name="labelwise")
