"""`kil annotate`: a local web page to click named reference keypoints on a recorded frame."""
