"""Where frames come from: image files, folders and globs, cameras, CSI, video files, streams, pipelines.

``images`` expands ``--image`` arguments and decodes them after the checks in ``imagecheck`` (untrusted
files: sizes from headers, truncation, special files); ``capture`` opens cameras, videos and streams and
reads them on their own thread, newest frame only for a live source.
"""
