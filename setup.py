from configparser import ConfigParser
from pathlib import Path
import setuptools, shlex
try: from packaging.version import Version
except ImportError: from setuptools._vendor.packaging.version import Version  # isolated build envs
assert Version(setuptools.__version__) >= Version('36.2')

# note: all settings are in settings.ini; edit there, not here
here = Path(__file__).parent
config = ConfigParser(delimiters=['='])
config.read(here/'settings.ini', encoding='utf-8')
cfg = config['DEFAULT']

cfg_keys = 'version description keywords author author_email'.split()
expected = cfg_keys + "lib_name user branch license status min_python audience language".split()
for o in expected: assert o in cfg, "missing expected setting: {}".format(o)
setup_cfg = {o:cfg[o] for o in cfg_keys}

licenses = {
    'apache2': ('Apache Software License 2.0','OSI Approved :: Apache Software License','Apache-2.0'),
    'mit': ('MIT License', 'OSI Approved :: MIT License','MIT'),
    'gpl2': ('GNU General Public License v2', 'OSI Approved :: GNU General Public License v2 (GPLv2)','GPL-2.0-only'),
    'gpl3': ('GNU General Public License v3', 'OSI Approved :: GNU General Public License v3 (GPLv3)','GPL-3.0-only'),
    'bsd3': ('BSD License', 'OSI Approved :: BSD License','BSD-3-Clause'),
}
statuses = [ '1 - Planning', '2 - Pre-Alpha', '3 - Alpha',
    '4 - Beta', '5 - Production/Stable', '6 - Mature', '7 - Inactive' ]
py_versions = '3.6 3.7 3.8 3.9 3.10 3.11 3.12 3.13'.split()

def _reqs(key): return shlex.split(cfg.get(key, '') or '')
requirements = _reqs('requirements') + _reqs('pip_requirements')
min_python = cfg['min_python']
lic = licenses.get(cfg['license'].lower(), (cfg['license'], None, None))
# setuptools>=77 wants an SPDX `license_expression` instead of License classifiers
if lic[2] and Version(setuptools.__version__) >= Version('77'):
    lic_kw, lic_cls = dict(license_expression=lic[2], license_files=['LICENSE']), []
else: lic_kw, lic_cls = dict(license=lic[0]), (['License :: ' + lic[1]] if lic[1] else [])
extras = {'dev': _reqs('dev_requirements'), 'tpu': _reqs('tpu_requirements'), 'peft': _reqs('peft_requirements')}

package_data = dict()
pkg_data = cfg.get('package_data', None)
if pkg_data:
    package_data[cfg['lib_name']] =  pkg_data.split() # split as multiple files might be listed
# Add package data to setup_cfg for setuptools.setup(..., **setup_cfg)
setup_cfg['package_data'] = package_data

readme = here/'README.md'
lib_path = cfg.get('lib_path', cfg['lib_name'])

setuptools.setup(
    name = cfg['lib_name'],
    classifiers = [
        'Development Status :: ' + statuses[int(cfg['status'])],
        'Intended Audience :: ' + cfg['audience'].title(),
        'Natural Language :: ' + cfg['language'].title(),
    ] + ['Programming Language :: Python :: '+o for o in py_versions[py_versions.index(min_python):]] + lic_cls,
    url = cfg['git_url'],
    packages = setuptools.find_packages(include=[lib_path, lib_path+'.*']),
    include_package_data = True,
    install_requires = requirements,
    extras_require = extras,
    dependency_links = cfg.get('dep_links','').split(),
    python_requires  = '>=' + cfg['min_python'],
    long_description = readme.read_text(encoding='utf-8') if readme.exists() else cfg['description'],
    long_description_content_type = 'text/markdown',
    zip_safe = False,
    entry_points = {
        'console_scripts': cfg.get('console_scripts','').split(),
        'nbdev': [f'{lib_path}={lib_path}._modidx:d']
    },
    **lic_kw, **setup_cfg)
