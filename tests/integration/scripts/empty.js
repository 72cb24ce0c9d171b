// Loads fine but registers nothing.
'use strict';
const unused = 1;
