"""Evaluation of generated streams.

synthetic_av  figures of a bouncing-ball stream read back from its pictures and sound (one ball, gravity,
              picture-pitch correlation, clicks at bounces, class), per segment
"""
