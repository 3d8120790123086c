# coding: utf-8
"""
@article{Sorzano2018,
title = "Blind estimation of DED camera gain in Electron Microscopy",
journal = "Journal of Structural Biology",
volume = "203",
pages = "90",
year = "2018",
author = "Sorzano, C. O. S. and others"
}
"""
