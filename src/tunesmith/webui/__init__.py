"""`tunesmith ui`: a local web app over run directories (a room at the top, like serve.py).

    runs.py     the runs under the app's output folders, read from their files alone: state (the run
                lock and the files), task, model, headline metric before -> after, curves, differences
    launch.py   the launch form from the config schema, the same validation as the CLI, the command
                line it stands for, the data preview and the doctor's verdict, and the `tunesmith
                train` processes it starts, stops (SIGTERM: the interrupt checkpoint) and resumes
    server.py   the FastAPI app: JSON for the page, the run files, and the guards (localhost by
                default, a token elsewhere, Host/Origin and CSRF checks on every POST)
    static/     the page: plain HTML, CSS and JavaScript with SVG charts, nothing fetched from elsewhere

The app writes nothing into a run directory: every run is written by the one `tunesmith train`
process that holds its lock, whether the page or a terminal started it.
"""
