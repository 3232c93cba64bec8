"""One module per DVC stage (`facekd <stage>`): thin commands over the library."""
