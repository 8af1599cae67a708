"""Making a picture of a study when Orthanc's own rendering is not enough.

measure.py   pure: does a rendering show anything (grey-level spread between percentiles)
decode.py    pydicom: frame 0 of a DICOM file to an 8-bit picture, bounded before decoding
sandbox.py   runs decode.py in a child process with time and memory limits
card.py      Pillow: a small card naming the study, for studies with no image to show
"""
