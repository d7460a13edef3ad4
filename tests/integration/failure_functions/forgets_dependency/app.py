import requests  # not in this function's requirements.txt: must fail as on AWS


def handler(event, context):
    return requests.__version__
