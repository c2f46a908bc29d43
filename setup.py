"""Installs lwstudy from settings.ini (nbdev 2 layout)."""
from configparser import ConfigParser
import setuptools

cfg = ConfigParser(delimiters=['='])
cfg.read('settings.ini', encoding='utf-8')
cfg = cfg['DEFAULT']
scripts = [s.strip() for s in cfg.get('console_scripts', '').split() if s.strip()]

setuptools.setup(
    name=cfg['lib_name'], version=cfg['version'], description=cfg['description'],
    author=cfg['author'], license=cfg['license'], python_requires=f">={cfg['min_python']}",
    packages=setuptools.find_packages(include=['lwstudy', 'lwstudy.*']),
    include_package_data=True,
    install_requires=cfg['requirements'].split(),
    extras_require={'dev': cfg['dev_requirements'].split()},
    entry_points={'console_scripts': scripts, 'nbdev': [f"{cfg['lib_path']}={cfg['lib_path']}._modidx:d"]},
    long_description=open('README.md', encoding='utf-8').read(), long_description_content_type='text/markdown',
    keywords=cfg['keywords'].split(), classifiers=['Programming Language :: Python :: 3'],
    url=cfg['git_url'], project_urls={'Source': cfg['git_url']},
    zip_safe=False,
)
